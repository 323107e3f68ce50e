##! Verdicts back from the detector: pending state, semiflow.log, notices, and a
##! status for every flow whose verdict never comes, including at shutdown.

@load base/frameworks/notice
@load ./main

module SemiFlow;

export {
	## What a worker remembers about a flow between request and verdict.
	type Pending: record {
		id: conn_id;
		start: time;
		sent: time;
		packets: count;
	};

	## Remember a request (called by batch.zeek when a flow is queued for publishing).
	global add_pending: function(uid: string, id: conn_id, start: time, packets: count);

	## Log one verdict (and raise the notice): what both verdict events do per flow.
	global record_verdict: function(uid: string, status: string, score: double,
	                                threshold: double, anomalous: bool, packets: count,
	                                model: string, model_version: string,
	                                detail: string);

	## Verdicts that arrived after their pending entry expired (or twice).
	global late_verdicts: count = 0;
}

function pending_expired(t: table[string] of Pending, uid: string): interval
	{
	# The verdict never came: make the coverage gap visible instead of silent.
	local p = t[uid];
	Log::write(SemiFlow::LOG, Info($ts=p$start, $uid=uid, $id=p$id, $status="timeout",
	                               $packets=p$packets,
	                               $detail=fmt("no verdict within %s (detector down, disconnected or overloaded)",
	                                           verdict_timeout)));
	return 0 sec;
	}

# The verdict may arrive after the connection is gone, so the state lives here and
# not in the connection record. &create_expire/&expire_func: expiry is scanned every
# table_expire_interval (base/init-bare.zeek@v8.1.0:1908).
global pending: table[string] of Pending &create_expire=verdict_timeout
	&expire_func=pending_expired;

function add_pending(uid: string, id: conn_id, start: time, packets: count)
	{
	# current_time(): wall clock (src/zeek.bif@v6.0.0), for the latency column.
	pending[uid] = Pending($id=id, $start=start, $sent=current_time(), $packets=packets);
	}

function record_verdict(uid: string, status: string, score: double, threshold: double,
                        anomalous: bool, packets: count, model: string,
                        model_version: string, detail: string)
	{
	if ( uid !in pending )
		{
		++late_verdicts;
		return;
		}
	local p = pending[uid];
	delete pending[uid];
	local rec = Info($ts=p$start, $uid=uid, $id=p$id, $status=status, $packets=packets,
	                 $latency=current_time() - p$sent);
	if ( |model| > 0 )
		rec$model = model;
	if ( |model_version| > 0 )
		rec$model_version = model_version;
	if ( |detail| > 0 )
		rec$detail = detail;
	if ( status == "ok" )
		{
		rec$score = score;
		rec$threshold = threshold;
		rec$verdict = anomalous ? "anomalous" : "normal";
		}
	Log::write(SemiFlow::LOG, rec);

	if ( status == "ok" && anomalous )
		# NOTICE (base/frameworks/notice/main.zeek@v6.0.0); suppression keys on
		# [note, identifier]. No $conn: the connection may be gone by now.
		NOTICE([$note=Anomalous_Flow,
		        $msg=fmt("anomalous flow %s:%s -> %s:%s (score %.3f > %.3f, %s)",
		                 p$id$orig_h, p$id$orig_p, p$id$resp_h, p$id$resp_p,
		                 score, threshold, model),
		        $sub=fmt("score=%.4f threshold=%.4f packets=%d", score, threshold, packets),
		        $uid=uid, $id=p$id,
		        $identifier=cat(p$id$orig_h, p$id$resp_h, p$id$resp_p),
		        $suppress_for=notice_suppression]);
	}

event SemiFlow::verdict(uid: string, status: string, score: double, threshold: double,
                        anomalous: bool, packets: count, model: string,
                        model_version: string, detail: string)
	{
	record_verdict(uid, status, score, threshold, anomalous, packets, model,
	               model_version, detail);
	}

event SemiFlow::verdict_batch(uids: vector of string, statuses: vector of string,
                              scores: vector of double, threshold: double,
                              anomalous: vector of bool, packets: vector of count,
                              model: string, model_version: string,
                              details: vector of string)
	{
	local n = |uids|;
	if ( |statuses| != n || |scores| != n || |anomalous| != n || |packets| != n ||
	     |details| != n )
		{
		Reporter::warning(fmt("semiflow: verdict_batch with vectors of different lengths (%d uids) ignored",
		                      n));
		return;
		}
	for ( i in uids )
		record_verdict(uids[i], statuses[i], scores[i], threshold, anomalous[i],
		               packets[i], model, model_version, details[i]);
	}

event zeek_done() &priority=-5
	{
	# Expiry timers are discarded at shutdown (src/Val.cc@v8.1.0:1505-1513
	# TableValTimer::Dispatch expires only when ! is_expire): log what is left, so
	# a restart or the end of a trace leaves no flow without a line (review R5).
	# Connections still open were flushed by their removal hooks before this
	# (done_with_network() runs session_mgr->Drain() before terminate_zeek() raises
	# zeek_done, src/zeek-setup.cc@v8.1.0:281, :312).
	for ( [uid], p in pending )
		Log::write(SemiFlow::LOG, Info($ts=p$start, $uid=uid, $id=p$id, $status="timeout",
		                               $packets=p$packets,
		                               $detail="shutdown before verdict"));
	clear_table(pending);
	}
