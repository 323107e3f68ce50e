##! Cluster deployment: workers extract and publish (collect.zeek runs where the
##! packets are), each worker receives its own verdicts on
##! Cluster::node_topic(Cluster::node) (transport.zeek sets reply_topic), and the
##! manager hosts the WebSocket endpoint the detectors connect to.
##!
##! Zeek >= 8.1 with zeekctl: the manager listens on 127.0.0.1:27759 already
##! (zeekctl UseWebSocket), nothing to do here. Zeek < 8.1: the manager calls
##! Broker::listen_websocket.

@load base/frameworks/cluster
@load ./main

module SemiFlow;

@if ( Cluster::is_enabled() && ! Version::at_least("8.1") )
event zeek_init() &priority=1
	{
	if ( listen_websocket && Cluster::local_node_type() == Cluster::MANAGER )
		Broker::listen_websocket(cat(websocket_addr), websocket_port);
	}
@endif
