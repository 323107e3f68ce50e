# The package loads and its log stream exists (no traffic needed).
# @TEST-EXEC: zeek -b $PACKAGE %INPUT >output
# @TEST-EXEC: btest-diff output

event zeek_init() &priority=-10
	{
	print Log::active_streams[SemiFlow::LOG]$path;
	print SemiFlow::k, SemiFlow::request_topic;
	}
