##! Per-worker batching: finished flows wait here and go out as ONE flow_batch event
##! (vectors of scalars, docs/wire-format.md) when SemiFlow::batch_size flows are ready
##! or the oldest has waited SemiFlow::batch_wait. A flow that finds no batch published
##! within the last batch_wait goes out at once, so a quiet sensor adds no delay; under
##! load the events per flow fall to 1/batch_size.
##!
##! Timers (schedule) run on network time: live, it follows the packets, and an idle
##! packet source moves it forward after packet_source_inactivity_timeout
##! (src/RunState.cc@v8.1.0:128-150; base/init-bare.zeek@v6.0.0:181, 100 msec). Pending
##! state (verdict.zeek) is created when a flow is queued, so a flow never leaves
##! without a semiflow.log line.

@load ./main
@load ./transport
@load ./verdict

module SemiFlow;

export {
	## Queue one finished flow for the next flow_batch (collect.zeek's flush).
	global enqueue: function(uid: string, id: conn_id, start: time, linktype: count,
	                         frames: vector of string, ts: vector of double,
	                         wire_len: vector of count, is_orig: vector of bool);
	## Publish what is queued now (batch full, batch_wait passed, end of a trace).
	global publish_batch: function();

	## Fires batch_wait after a flow started a new batch; gen tells stale timers apart.
	global batch_wait_expired: event(gen: count);

	## Counters: events published and flows they carried.
	global batches_published: count = 0;
	global flows_published: count = 0;
}

# The batch being filled: per flow, and every flow's frames back to back.
global b_uids: vector of string = vector();
global b_orig_h: vector of addr = vector();
global b_orig_p: vector of port = vector();
global b_resp_h: vector of addr = vector();
global b_resp_p: vector of port = vector();
global b_n: vector of count = vector();
global b_frames: vector of string = vector();
global b_ts: vector of double = vector();
global b_wire_len: vector of count = vector();
global b_is_orig: vector of bool = vector();
# All flows of a worker share its packet source's DLT (collect.zeek).
global b_linktype: count = 0;
global b_gen: count = 0;
global last_publish: time = double_to_time(0.0);
global next_shard: count = 0;

function reset_batch()
	{
	++b_gen;
	b_uids = vector();
	b_orig_h = vector();
	b_orig_p = vector();
	b_resp_h = vector();
	b_resp_p = vector();
	b_n = vector();
	b_frames = vector();
	b_ts = vector();
	b_wire_len = vector();
	b_is_orig = vector();
	}

function publish_batch()
	{
	if ( |b_uids| == 0 )
		{
		++b_gen;
		return;
		}
	local topic = fmt("%s%d/", request_topic, next_shard % shards);
	++next_shard;
	send_batch(topic, b_uids, b_linktype, b_orig_h, b_orig_p, b_resp_h, b_resp_p, b_n,
	           b_frames, b_ts, b_wire_len, b_is_orig);
	++batches_published;
	flows_published += |b_uids|;
	last_publish = network_time();
	reset_batch();
	}

function enqueue(uid: string, id: conn_id, start: time, linktype: count,
                 frames: vector of string, ts: vector of double,
                 wire_len: vector of count, is_orig: vector of bool)
	{
	add_pending(uid, id, start, |frames|);
	b_linktype = linktype;
	b_uids += uid;
	b_orig_h += id$orig_h;
	b_orig_p += id$orig_p;
	b_resp_h += id$resp_h;
	b_resp_p += id$resp_p;
	b_n += |frames|;
	for ( i in frames )
		{
		b_frames += frames[i];
		b_ts += ts[i];
		b_wire_len += wire_len[i];
		b_is_orig += is_orig[i];
		}
	# network_time() (src/zeek.bif@v6.0.0:338): the clock `schedule` runs on too.
	if ( |b_uids| >= batch_size || network_time() - last_publish >= batch_wait )
		publish_batch();
	else if ( |b_uids| == 1 )
		schedule batch_wait { SemiFlow::batch_wait_expired(b_gen) };
	}

event SemiFlow::batch_wait_expired(gen: count)
	{
	if ( gen == b_gen )
		publish_batch();
	}

event zeek_done() &priority=5
	{
	# Nothing can answer now: drop the unsent batch; its flows are in `pending`,
	# which verdict.zeek's zeek_done logs with status=timeout.
	reset_batch();
	}
