##! Verdicts back from the detector: pending state, semiflow.log, notices, and a
##! status for every flow whose verdict never comes.

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

	## Remember a published request (called by collect.zeek).
	global add_pending: function(uid: string, id: conn_id, start: time, packets: count);

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
# not in the connection record.
global pending: table[string] of Pending &create_expire=verdict_timeout
	&expire_func=pending_expired;

function add_pending(uid: string, id: conn_id, start: time, packets: count)
	{
	pending[uid] = Pending($id=id, $start=start, $sent=current_time(), $packets=packets);
	}

event SemiFlow::verdict(uid: string, status: string, score: double, threshold: double,
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
		# No $conn: the connection may be gone by now (zeek-facts: notices).
		NOTICE([$note=Anomalous_Flow,
		        $msg=fmt("anomalous flow %s:%s -> %s:%s (score %.3f > %.3f, %s)",
		                 p$id$orig_h, p$id$orig_p, p$id$resp_h, p$id$resp_p,
		                 score, threshold, model),
		        $sub=fmt("score=%.4f threshold=%.4f packets=%d", score, threshold, packets),
		        $uid=uid, $id=p$id,
		        $identifier=cat(p$id$orig_h, p$id$resp_h, p$id$resp_p),
		        $suppress_for=notice_suppression]);
	}
