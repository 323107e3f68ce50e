# With no detector connected, every analysed flow must still reach semiflow.log with
# status timeout (coverage gaps are logged, never silent).
# @TEST-EXEC: zeek -r $TRACES/http.pcap $PACKAGE %INPUT
# @TEST-EXEC: zeek-cut status < semiflow.log | sort | uniq -c > statuses
# @TEST-EXEC: btest-diff statuses

redef SemiFlow::verdict_timeout = 1 sec;
redef SemiFlow::max_wait = 1 sec;
# Keep Zeek running after the trace so pending requests expire (zeek-facts: -r).
redef exit_only_after_terminate = T;

event zeek_init()
	{
	schedule 5 sec { terminate_now() };
	}

global terminate_now: event();

event terminate_now()
	{
	terminate();
	}
