##! Cluster deployment: workers extract and publish (collect.zeek runs where the
##! packets are), each worker receives its own verdicts on
##! Cluster::node_topic(Cluster::node) (transport.zeek sets reply_topic), and the
##! manager hosts the WebSocket endpoint the detectors connect to.
##!
##! - Zeek >= 8.1 with zeekctl: the manager listens on 127.0.0.1:27759 already
##!   (zeekctl UseWebSocket, on by default in 8.1), nothing to do here.
##! - Zeek 7.2-8.0: the manager calls Cluster::listen_websocket (transport.zeek
##!   SemiFlow::listen_endpoint), whose clients go through the backend's hub
##!   (src/broker/WebSocketShim.cc@v8.0.0:25; Zeek's own test
##!   testing/btest/cluster/websocket/broker/manager-worker-ping-pong.zeek@v8.0.0).
##!   With zeekctl 8.0 UseWebSocket = 1 keep WebSocketHost/Port equal to
##!   SemiFlow::websocket_addr/port (a second listen_websocket with the same options
##!   succeeds: testing/btest/cluster/websocket/listen-idempotent.zeek@v7.2.0), or set
##!   SemiFlow::listen_websocket = F (review R2).
##! - Zeek 6.0-7.1: NOT SUPPORTED in a cluster. Broker::listen_websocket makes the
##!   client a pseudo-peer whose messages are neither forwarded to workers nor
##!   subscribed for (broker@3df8d357 src/internal/core_actor.cc:881, :1029; review
##!   R1). Workers still collect and publish, so every flow ends as status=timeout,
##!   and the manager says why at startup.

@load base/misc/version
@load base/frameworks/cluster
@load ./main
@load ./transport

module SemiFlow;

@if ( Cluster::is_enabled() )
@if ( Version::at_least("7.2") && ! Version::at_least("8.1") )
event zeek_init() &priority=1
	{
	# Cluster::local_node_type (base/frameworks/cluster/main.zeek@v6.0.0:212).
	if ( listen_websocket && Cluster::local_node_type() == Cluster::MANAGER )
		listen_endpoint();
	}
@endif

@if ( ! Version::at_least("7.2") )
event zeek_init() &priority=1
	{
	if ( Cluster::local_node_type() == Cluster::MANAGER )
		Reporter::warning("semiflow: clusters need Zeek >= 7.2 (Cluster::listen_websocket); "
		                  + "on this version no request reaches the detector and every flow "
		                  + "is logged with status=timeout (docs/zeek.md)");
	}
@endif
@endif
