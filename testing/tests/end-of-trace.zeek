# Without a detector every analysed flow still reaches semiflow.log: the end of the trace
# publishes the flows still being collected (Pcap::file_done), the package terminates
# (no listener, nobody can answer) and zeek_done logs every pending flow as timeout.
# Trace: Scripts/make-trace.py (3 TCP connections of 8 packets, 1 UDP of 2).
# @TEST-EXEC: zeek -b -r $TRACES/semiflow-small.pcap $PACKAGE %INPUT
# @TEST-EXEC: zeek-cut status detail packets < semiflow.log | sort | uniq -c > statuses
# @TEST-EXEC: btest-diff statuses

redef SemiFlow::listen_websocket = F;
