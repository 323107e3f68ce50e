##! The WebSocket endpoint and publish/subscribe, per Zeek version.
##!
##! - Zeek < 7.1: Broker::publish / Broker::subscribe (base/bif/messaging.bif.zeek@v6.0.0).
##! - Zeek >= 7.1: Cluster::publish (src/cluster/cluster.bif@v7.1.0:24) /
##!   Cluster::subscribe (base/frameworks/cluster/main.zeek@v7.1.0:312).
##! - Zeek >= 7.2: Cluster::listen_websocket(Cluster::WebSocketServerOptions)
##!   (base/frameworks/cluster/main.zeek@v7.2.0:378; types.zeek@v8.1.0:97). It uses
##!   the cluster backend's hub, so in a cluster the requests of every worker reach the
##!   detector and verdicts reach the worker (review R1); TLS is off unless
##!   SemiFlow::websocket_tls sets a certificate (7.2 NEWS:132-133), without touching
##!   Broker's own TLS (review R6). WebSocketServerOptions has $listen_host: string on
##!   7.2 and $listen_addr: addr from 8.0 (main.zeek@v8.0.0:364-380).
##! - Zeek 6.0-7.1: Broker::listen_websocket(a, p) (base/frameworks/broker/main.zeek@
##!   v6.0.0; deprecated 7.2, removed 8.1). Broker speaks TLS on it unless the user sets
##!   `redef Broker::disable_ssl = T;` (broker doc/web-socket.rst: same SSL parameters as
##!   native peers). The package does not change that global default (review R6).
##! - Zeek >= 8.1 standalone has no cluster backend (Cluster::CLUSTER_BACKEND_NONE,
##!   init-bare.zeek@v8.1.0:6121), so WebSocket clients get no ack. As
##!   policy/frameworks/cluster/websocket/server.zeek@v8.1.0 does, the ZeroMQ backend
##!   is loaded with a local proxy thread; unlike that script, the listener is started
##!   here, honouring SemiFlow::listen_websocket, websocket_addr/port and websocket_tls
##!   (review S3).

@load base/misc/version
@load base/frameworks/cluster
@load ./main

@if ( Version::at_least("8.1") )
@if ( ! Cluster::is_enabled() && Cluster::backend == Cluster::CLUSTER_BACKEND_NONE )
# policy/frameworks/cluster/websocket/server.zeek@v8.1.0:20-31.
@load frameworks/cluster/backend/zeromq
redef Cluster::Backend::ZeroMQ::run_proxy_thread = T;
@endif
@endif

module SemiFlow;

export {
	## Where verdicts for this node must be sent (set in zeek_init).
	global reply_topic: string = "";

@if ( Version::at_least("7.2") )
	## TLS of the package's WebSocket listener (Cluster::WebSocketTLSOptions,
	## base/frameworks/cluster/main.zeek@v7.2.0:345; types.zeek in 8.1): set
	## $cert_file and $key_file for wss://, $enable_peer_verification and $ca_file
	## to require client certificates (semiflow serve --tls-cert/--tls-key).
	const websocket_tls: Cluster::WebSocketTLSOptions = Cluster::WebSocketTLSOptions() &redef;
@endif

	## Publish one flow_batch (version-independent wrapper).
	global send_batch: function(topic: string, uids: vector of string, linktype: count,
	                            orig_h: vector of addr, orig_p: vector of port,
	                            resp_h: vector of addr, resp_p: vector of port,
	                            n_frames: vector of count, frames: vector of string,
	                            ts: vector of double, wire_len: vector of count,
	                            is_orig: vector of bool): bool;

	## Start the package's WebSocket listener with the SemiFlow:: options.
	global listen_endpoint: function(): bool;
}

function send_batch(topic: string, uids: vector of string, linktype: count,
                    orig_h: vector of addr, orig_p: vector of port,
                    resp_h: vector of addr, resp_p: vector of port,
                    n_frames: vector of count, frames: vector of string,
                    ts: vector of double, wire_len: vector of count,
                    is_orig: vector of bool): bool
	{
@if ( Version::at_least("7.1") )
	return Cluster::publish(topic, SemiFlow::flow_batch, reply_topic, uids, linktype, k,
	                        snaplen, orig_h, orig_p, resp_h, resp_p, n_frames, frames,
	                        ts, wire_len, is_orig);
@else
	return Broker::publish(topic, SemiFlow::flow_batch, reply_topic, uids, linktype, k,
	                       snaplen, orig_h, orig_p, resp_h, resp_p, n_frames, frames,
	                       ts, wire_len, is_orig);
@endif
	}

function subscribe(prefix: string): bool
	{
@if ( Version::at_least("7.1") )
	return Cluster::subscribe(prefix);
@else
	return Broker::subscribe(prefix);
@endif
	}

function listen_endpoint(): bool
	{
@if ( Version::at_least("8.0") )
	# $listen_addr: base/frameworks/cluster/main.zeek@v8.0.0:368, types.zeek@v8.1.0:99.
	return Cluster::listen_websocket(Cluster::WebSocketServerOptions(
		$listen_addr=websocket_addr, $listen_port=websocket_port,
		$tls_options=websocket_tls));
@else
@if ( Version::at_least("7.2") )
	# $listen_host: string on 7.2 (base/frameworks/cluster/main.zeek@v7.2.0:363).
	return Cluster::listen_websocket(Cluster::WebSocketServerOptions(
		$listen_host=cat(websocket_addr), $listen_port=websocket_port,
		$tls_options=websocket_tls));
@else
	# Broker's listener (base/frameworks/broker/main.zeek@v6.0.0); returns the port
	# bound, 0/tcp on failure (base/frameworks/broker/main.zeek@v6.0.0:553).
	return Broker::listen_websocket(cat(websocket_addr), websocket_port) != 0/tcp;
@endif
@endif
	}

event zeek_init() &priority=1
	{
	if ( Cluster::is_enabled() )
		# Subscribed by the cluster framework on every node
		# (setup-connections.zeek@v6.0.0:106; setup-subscriptions.zeek@v8.1.0:45); the
		# detector replies there so the worker holding the pending state logs it.
		reply_topic = Cluster::node_topic(Cluster::node);
	else
		{
		reply_topic = verdict_topic;
		# Client-sent events are dispatched only if this node subscribes to a
		# prefix of their topic and the event is declared (main.zeek).
		subscribe(verdict_topic);
		if ( listen_websocket )
			listen_endpoint();
		}
	}
