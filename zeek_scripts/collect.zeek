##! Per connection: keep the frames the flow-sample spec selects and publish one
##! flow_request when the k-th arrives, when the connection is removed, or when
##! SemiFlow::max_wait has passed, whichever comes first.
##!
##! new_packet is "very low-level and expensive" (base/bif/event.bif.zeek): after the
##! first packet of a connection every handler call is one record-field test, and once
##! the flow is published (or excluded) it returns at that test.

@load base/protocols/conn/removal-hooks
@load ./main
@load ./transport
@load ./verdict

module SemiFlow;

export {
	## Per-connection collection state.
	type FlowState: record {
		done: bool &default=F;
		frames: vector of string &default=vector();
		ts: vector of double &default=vector();
		wire_len: vector of count &default=vector();
		is_orig: vector of bool &default=vector();
	};

	## Publish the flow now (k packets, timer or removal); idempotent.
	global flush: function(c: connection, why: string);
	## Log a flow that is not sent to the detector.
	global log_local: function(c: connection, status: string, detail: string);

	## Scheduled SemiFlow::max_wait after a connection's first packet.
	global max_wait_expired: event(c: connection);
}

redef record connection += {
	semiflow: FlowState &optional;
};

# The real DLT of the packet source (1 = Ethernet). pcap_packet$link_type is a
# two-value enum (base/init-bare.zeek), so it cannot be used; PacketSource$link_type
# is an int (base/init-bare.zeek "type PacketSource").
global dlt: count = 0;
global dlt_known = F;
global next_shard: count = 0;

event SemiFlow::max_wait_expired(c: connection)
	{
	flush(c, "max_wait");
	}

hook finalize_semiflow(c: connection)
	{
	# Conn::RemovalHook (base/protocols/conn/removal-hooks.zeek): cheaper than a
	# global connection_state_remove handler.
	flush(c, "removal");
	}

function wanted(c: connection): bool
	{
	if ( c?$tunnel )
		# new_packet's frame still holds the outer encapsulation (docs/zeek.md).
		return F;
	if ( get_port_transport_proto(c$id$resp_p) !in include_protocols )
		return F;
	if ( c$id$resp_p in exclude_ports )
		return F;
	if ( c$id$orig_h in exclude_subnets || c$id$resp_h in exclude_subnets )
		return F;
	if ( |include_subnets| > 0 && c$id$orig_h !in include_subnets &&
	     c$id$resp_h !in include_subnets )
		return F;
	return T;
	}

function log_local(c: connection, status: string, detail: string)
	{
	Log::write(SemiFlow::LOG, Info($ts=c$start_time, $uid=c$uid, $id=c$id,
	                               $status=status, $detail=detail));
	}

# Transport payload length as detector/frame.py computes it (IP length fields minus
# the transport header). Zeek's tcp_hdr$dl is exactly that for TCP.
function payload_len(p: pkt_hdr): count
	{
	if ( p?$tcp )
		return p$tcp$dl;
	if ( p?$udp )
		return p$udp$ulen > 8 ? p$udp$ulen - 8 : 0;
	if ( p?$ip )
		return p$ip$len > p$ip$hl + 8 ? p$ip$len - p$ip$hl - 8 : 0;
	if ( p?$ip6 )
		# Extension headers are not subtracted: a superset is shipped and the
		# detector applies the spec itself.
		return p$ip6$len > 8 ? p$ip6$len - 8 : 0;
	return 0;
	}

function is_from_orig(c: connection, p: pkt_hdr): bool
	{
	local src: addr;
	if ( p?$ip )
		src = p$ip$src;
	else if ( p?$ip6 )
		src = p$ip6$src;
	else
		return T;
	if ( src != c$id$orig_h )
		return F;
	if ( p?$tcp )
		return p$tcp$sport == c$id$orig_p;
	if ( p?$udp )
		return p$udp$sport == c$id$orig_p;
	return T;
	}

function flush(c: connection, why: string)
	{
	if ( ! c?$semiflow || c$semiflow$done )
		return;
	local st = c$semiflow;
	st$done = T;
	if ( |st$frames| == 0 )
		{
		log_local(c, "no_payload", "no packet carried payload");
		return;
		}
	local topic = fmt("%s%d/", request_topic, next_shard % shards);
	++next_shard;
	SemiFlow::add_pending(c$uid, c$id, c$start_time, |st$frames|);
	send_request(topic, c$uid, c$id$orig_h, c$id$orig_p, c$id$resp_h, c$id$resp_p,
	             dlt, st$frames, st$ts, st$wire_len, st$is_orig);
	# Free the frames now: the connection may live on for minutes.
	st$frames = vector();
	st$ts = vector();
	st$wire_len = vector();
	st$is_orig = vector();
	}

event new_packet(c: connection, p: pkt_hdr)
	{
	if ( c?$semiflow )
		{
		if ( c$semiflow$done )
			return;
		}
	else
		{
		if ( ! wanted(c) )
			{
			c$semiflow = FlowState($done=T);
			return;
			}
		if ( sampling_rate < 1.0 && rand(1000000) >= double_to_count(sampling_rate * 1000000.0) )
			{
			c$semiflow = FlowState($done=T);
			log_local(c, "unsampled", fmt("SemiFlow::sampling_rate=%s", sampling_rate));
			return;
			}
		c$semiflow = FlowState();
		Conn::register_removal_hook(c, finalize_semiflow);
		schedule max_wait { SemiFlow::max_wait_expired(c) };
		if ( ! dlt_known )
			{
			dlt = |packet_source()$link_type|;
			dlt_known = T;
			}
		}

	if ( ! select_all && payload_len(p) == 0 )
		return;

	# get_current_packet(): the frame that raised this event, link-layer header
	# included (base/bif/zeek.bif.zeek; base/init-bare.zeek "type pcap_packet").
	local pkt = get_current_packet();
	local data = pkt$data;
	if ( snaplen > 0 && |data| > snaplen )
		data = data[0:snaplen];
	local st = c$semiflow;
	# Packet bytes travel base64-encoded: Zeek's JSON writer copies non-escaped bytes
	# raw, which is not valid JSON for arbitrary bytes (docs/wire-format.md).
	st$frames += encode_base64(data);
	st$ts += pkt$ts_sec + pkt$ts_usec / 1000000.0;
	st$wire_len += pkt$len;
	st$is_orig += is_from_orig(c, p);
	if ( |st$frames| >= k )
		flush(c, "k");
	}

event connection_flipped(c: connection)
	{
	# Zeek swapped originator and responder: so do the collected directions.
	if ( ! c?$semiflow || c$semiflow$done )
		return;
	local v = c$semiflow$is_orig;
	for ( i in v )
		v[i] = ! v[i];
	}
