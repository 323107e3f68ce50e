# Batching on network time: the first flow goes out at once (no batch published within
# batch_wait), the next ones wait for the batch; the end of the trace publishes the rest
# as one flow_batch. Trace: Scripts/make-trace.py (flows finish at +8, +116, +224 ms and
# at the end of the trace, +326 ms).
# @TEST-EXEC: zeek -b -r $TRACES/semiflow-small.pcap $PACKAGE %INPUT >output
# @TEST-EXEC: btest-diff output

redef SemiFlow::listen_websocket = F;
redef SemiFlow::batch_wait = 1 sec;

event zeek_done() &priority=10
	{
	print fmt("%d batches, %d flows", SemiFlow::batches_published,
	          SemiFlow::flows_published);
	}
