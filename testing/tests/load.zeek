# The package loads in bare mode and its log stream exists (no traffic needed).
# @TEST-EXEC: zeek -b $PACKAGE %INPUT >output
# @TEST-EXEC: btest-diff output

# No listener: a listening endpoint is a counting IO source and would keep Zeek running
# (src/broker/Manager.cc@v8.0.0:754-755); terminate() as Zeek's own WebSocket btests do.
redef SemiFlow::listen_websocket = F;

event zeek_init() &priority=-10
	{
	print Log::active_streams[SemiFlow::LOG]$path;
	print SemiFlow::k, SemiFlow::request_topic, SemiFlow::batch_size, SemiFlow::batch_wait;
	terminate();
	}
