##! Options, the log record and the wire events of the semiflow package.
##!
##! The wire format (event names, argument order and types) is documented ONCE in
##! docs/wire-format.md; plugin/zeek_wire.py is its Python side and
##! tests/test_zeek_scripts.py holds the declarations below against it.
##! Events that cross the wire carry scalars and vectors of scalars only: records such as
##! conn_id change shape across Zeek versions (proto in 7.1, ctx in 8.0).

# Version::at_least is defined here; init-default loads it but bare mode (`zeek -b`, the
# package's btests) does not (scripts/base/init-default.zeek@v8.1.0:97; review L1).
@load base/misc/version
@load base/frameworks/notice
@load base/protocols/conn

module SemiFlow;

export {
	# Log::ID, Notice::Type: base/frameworks/logging/main.zeek, notice/main.zeek@v6.0.0.
	redef enum Log::ID += { LOG };
	## Notice raised for every flow the model scores above its threshold.
	redef enum Notice::Type += { Anomalous_Flow };

	global log_policy: Log::PolicyHook;

	## Packets per flow sample: must equal the model's K (the detector answers
	## status=error otherwise).
	const k: count = 8 &redef;
	## Bytes per packet in the model input (the model's L). Informational on this
	## side: frames are cut at snaplen, which must be 0 or >= l + 64.
	const l: count = 1600 &redef;
	## Bytes of each frame shipped (link-layer header included); 0 = whole frame.
	## l + 64 keeps every sample byte for link + IP + TCP headers up to 184 bytes.
	const snaplen: count = 1664 &redef;
	## Ship every packet (spec selection "all", the default: the flow-level model
	## judges handshakes, scans and floods too); F ships payload-carrying packets
	## only, for packet-level models trained with selection "payload".
	const select_all: bool = T &redef;

	## Topic prefix requests are published to (trailing slash; the detector
	## subscribes to it, or to request_topic + "<shard>/").
	const request_topic: string = "zeek/semiflow/request/" &redef;
	## Topic a standalone Zeek receives verdicts on. In a cluster, each worker gets
	## its verdicts on Cluster::node_topic(Cluster::node) instead.
	const verdict_topic: string = "zeek/semiflow/verdict/" &redef;
	## Number of detector shards: requests go round-robin to request_topic + "<i>/".
	## 1 = no sharding (requests go to request_topic + "0/").
	const shards: count = 1 &redef;

	## Publish a flow at the latest this long after its first selected packet, even
	## if it has fewer than k packets (bounds verdict latency for slow flows).
	const max_wait: interval = 10 sec &redef;
	## A flow whose verdict has not arrived this long after its request is logged
	## with status=timeout (detector down, overloaded or disconnected). Expiry is
	## scanned every table_expire_interval (10 s, base/init-bare.zeek), so the line
	## appears up to that much later.
	const verdict_timeout: interval = 30 sec &redef;

	## Flows per flow_batch event: a worker publishes its finished flows as one event
	## when this many are ready (batch.zeek). 1 = one event per flow.
	const batch_size: count = 64 &redef;
	## ... or when the oldest buffered flow has waited this long. A flow that finds no
	## batch published within the last batch_wait goes out at once (a quiet sensor
	## adds no delay). Timers run on network time: on an idle link they fire up to
	## packet_source_inactivity_timeout (100 msec, base/init-bare.zeek) late.
	const batch_wait: interval = 20 msec &redef;

	## Which transport protocols are analysed.
	const include_protocols: set[transport_proto] = { tcp, udp, icmp } &redef;
	## Responder ports never analysed (e.g. bulk backup traffic).
	const exclude_ports: set[port] = { } &redef;
	## If non-empty, only connections with an endpoint in one of these subnets.
	const include_subnets: set[subnet] = { } &redef;
	## Connections with an endpoint in one of these subnets are never analysed.
	const exclude_subnets: set[subnet] = { } &redef;
	## Fraction of connections analysed (overload valve); the rest are logged with
	## status=unsampled so the coverage gap stays visible.
	const sampling_rate: double = 1.0 &redef;

	## Host the WebSocket endpoint the detector connects to: standalone on every
	## version, on the manager of a 7.2-8.0 cluster (transport.zeek, cluster.zeek).
	## F: another script (or zeekctl UseWebSocket) listens.
	const listen_websocket: bool = T &redef;
	## WebSocket listen address/port, on every version.
	const websocket_addr: addr = 127.0.0.1 &redef;
	const websocket_port: port = 27759/tcp &redef;

	## Log a no_payload line for in-scope connections that never had a selected
	## packet (select_all=F only). F: no state, hook or line for them at all.
	const log_no_payload: bool = T &redef;
	## Reading a trace (-r): when it ends, publish every collected flow at once and
	## terminate as soon as every verdict is in (or at once if nobody can answer).
	const offline_terminate: bool = T &redef;

	## Suppression interval of Anomalous_Flow notices (per orig_h, resp_h, resp_p).
	const notice_suppression: interval = 1 hr &redef;

	## One line per analysed flow in semiflow.log.
	type Info: record {
		## First packet of the connection.
		ts: time &log;
		uid: string &log;
		id: conn_id &log;
		## ok | no_payload | unparsed | error | shed | timeout | unsampled | allowlisted
		status: string &log;
		score: double &log &optional;
		threshold: double &log &optional;
		## normal | anomalous (status ok only)
		verdict: string &log &optional;
		model: string &log &optional;
		model_version: string &log &optional;
		## Packets the sample was built from.
		packets: count &log &default=0;
		## Request published -> verdict received (wall clock).
		latency: interval &log &optional;
		## Why a status is not ok.
		detail: string &log &optional;
	};

	global log_semiflow: event(rec: Info);

	## Zeek -> detector: one flow's selected frames (docs/wire-format.md). Published by
	## package versions before batching; the detector still answers it.
	##
	## uid: the connection uid; reply_topic: where the verdict must go;
	## orig_h/orig_p/resp_h/resp_p: the connection id as scalars;
	## linktype: the DLT of the frames (packet_source()$link_type);
	## k: SemiFlow::k; snaplen: SemiFlow::snaplen;
	## frames: base64 of each frame (link-layer header included, cut at snaplen);
	## ts: packet timestamps (epoch seconds); wire_len: frame lengths on the wire;
	## is_orig: T for originator -> responder.
	global flow_request: event(uid: string, reply_topic: string, orig_h: addr,
	                           orig_p: port, resp_h: addr, resp_p: port,
	                           linktype: count, k: count, snaplen: count,
	                           frames: vector of string, ts: vector of double,
	                           wire_len: vector of count, is_orig: vector of bool);

	## Zeek -> detector: the finished flows of one worker, as vectors (docs/wire-format.md).
	##
	## reply_topic, linktype, k, snaplen: as in flow_request, shared by every flow;
	## uids/orig_h/orig_p/resp_h/resp_p/n_frames: one entry per flow; frames, ts,
	## wire_len, is_orig: every flow's frames back to back (flow i owns the next
	## n_frames[i] entries).
	global flow_batch: event(reply_topic: string, uids: vector of string,
	                         linktype: count, k: count, snaplen: count,
	                         orig_h: vector of addr, orig_p: vector of port,
	                         resp_h: vector of addr, resp_p: vector of port,
	                         n_frames: vector of count, frames: vector of string,
	                         ts: vector of double, wire_len: vector of count,
	                         is_orig: vector of bool);

	## Detector -> Zeek: the verdicts of (part of) one flow_batch; one entry per flow,
	## except threshold/model/model_version, which are the model's.
	global verdict_batch: event(uids: vector of string, statuses: vector of string,
	                            scores: vector of double, threshold: double,
	                            anomalous: vector of bool, packets: vector of count,
	                            model: string, model_version: string,
	                            details: vector of string);

	## Detector -> Zeek: the verdict for one flow (docs/wire-format.md).
	##
	## status: ok | no_payload | unparsed | error | shed | allowlisted; score/threshold are
	## meaningful for status ok only (0.0 otherwise; JSON has no NaN).
	global verdict: event(uid: string, status: string, score: double,
	                      threshold: double, anomalous: bool, packets: count,
	                      model: string, model_version: string, detail: string);

	## Detector -> Zeek: live traffic has drifted from the served model's training
	## reference (a population-stability index per signal over one window;
	## docs/wire-format.md). drift.zeek raises SemiFlow::Model_Drift.
	global model_drift: event(model_version: string, signal: string, psi: double,
	                          threshold: double, flows: count, window_start: double,
	                          window_end: double);
}

event zeek_init() &priority=5
	{
	# Log::create_stream (base/frameworks/logging/main.zeek@v6.0.0:411); $path: without
	# it the stream would be written to semi_flow.log.
	Log::create_stream(SemiFlow::LOG, [$columns=Info, $ev=log_semiflow,
	                   $path="semiflow", $policy=log_policy]);
	}
