##! The WebSocket endpoint and publish/subscribe, per Zeek version.
##!
##! - Zeek < 7.1: Broker::publish / Broker::subscribe (base/bif/messaging.bif.zeek).
##! - Zeek >= 7.1: Cluster::publish / Cluster::subscribe (base/bif/cluster.bif.zeek,
##!   base/frameworks/cluster/main.zeek).
##! - Zeek < 8.1: Broker::listen_websocket(a, p) hosts the endpoint (removed in 8.1,
##!   base/frameworks/broker/main.zeek); Broker's WebSocket speaks TLS unless
##!   Broker::disable_ssl=T.
##! - Zeek >= 8.1 standalone has no cluster backend, so WebSocket clients get no ack;
##!   policy/frameworks/cluster/websocket/server.zeek loads the ZeroMQ backend and
##!   calls Cluster::listen_websocket on 127.0.0.1:27759 (ZEEK_WEBSOCKET_LISTEN_ADDRESS,
##!   ZEEK_WEBSOCKET_LISTEN_PORT). In a zeekctl 8.1+ cluster the manager already listens
##!   (UseWebSocket), so nothing is loaded here.

@load base/frameworks/cluster
@load ./main

@if ( Version::at_least("8.1") )
@if ( ! Cluster::is_enabled() )
@load frameworks/cluster/websocket/server
@endif
@else
# Plain ws:// on the loopback endpoint; see docs/zeek.md for TLS on Zeek < 8.1.
redef Broker::disable_ssl = T;
@endif

module SemiFlow;

export {
	## Where verdicts for this node must be sent (set in zeek_init).
	global reply_topic: string = "";

	## Publish one flow_request (version-independent wrapper).
	global send_request: function(topic: string, uid: string, orig_h: addr,
	                              orig_p: port, resp_h: addr, resp_p: port,
	                              linktype: count, frames: vector of string,
	                              ts: vector of double, wire_len: vector of count,
	                              is_orig: vector of bool): bool;
}

function send_request(topic: string, uid: string, orig_h: addr, orig_p: port,
                      resp_h: addr, resp_p: port, linktype: count,
                      frames: vector of string, ts: vector of double,
                      wire_len: vector of count, is_orig: vector of bool): bool
	{
@if ( Version::at_least("7.1") )
	return Cluster::publish(topic, SemiFlow::flow_request, uid, reply_topic, orig_h,
	                        orig_p, resp_h, resp_p, linktype, k, snaplen, frames, ts,
	                        wire_len, is_orig);
@else
	return Broker::publish(topic, SemiFlow::flow_request, uid, reply_topic, orig_h,
	                       orig_p, resp_h, resp_p, linktype, k, snaplen, frames, ts,
	                       wire_len, is_orig);
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

event zeek_init() &priority=1
	{
	if ( Cluster::is_enabled() )
		# Subscribed by the cluster framework on every node; the detector replies
		# there so the worker holding the pending state logs the verdict.
		reply_topic = Cluster::node_topic(Cluster::node);
	else
		{
		reply_topic = verdict_topic;
		# Client-sent events are dispatched only if this node subscribes to a
		# prefix of their topic and the event is declared (main.zeek).
		subscribe(verdict_topic);
		}

@if ( ! Version::at_least("8.1") )
	if ( listen_websocket && ! Cluster::is_enabled() )
		Broker::listen_websocket(cat(websocket_addr), websocket_port);
@endif
	}
