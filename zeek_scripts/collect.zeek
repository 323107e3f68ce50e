##! Per connection: keep the frames the flow-sample spec selects and hand the flow to
##! batch.zeek when the k-th arrives, when the connection is removed, or when
##! SemiFlow::max_wait has passed since its first selected packet, whichever comes first.
##!
##! new_packet (src/event.bif@v8.1.0:283) is "very low-level and expensive": the engine
##! raises it for every packet of every connection, before any script runs and also
##! after the flow is done (src/packet_analysis/protocol/ip/IPBasedAnalyzer.cc@v8.1.0:
##! 90-92; review P1). The package has ONE handler (scope, sampling and allow-list are
##! decided on the first packet), and once a flow is done or excluded every call
##! returns at its first record-field test. Per connection (review P2): state is a
##! done-marker until the first selected packet; the vectors, the max_wait timer (which
##! holds only the conn_id, never the connection record) and, with log_no_payload=F,
##! the removal hook are created on that packet; flush unregisters the hook.

@load base/protocols/conn/removal-hooks
@load ./main
@load ./allowlist
@load ./batch

module SemiFlow;

export {
	## Per-connection collection state. The vectors exist from the first selected
	## packet on; src_h/src_p hold each frame's source so that is_orig is decided
	## against the final c$id in flush (a flip rewrites c$id in place before
	## new_packet's handlers run, src/Conn.cc@v8.1.0:307; review R8).
	type FlowState: record {
		done: bool &default=F;
		hooked: bool &default=F;
		frames: vector of string &optional;
		ts: vector of double &optional;
		wire_len: vector of count &optional;
		src_h: vector of addr &optional;
		src_p: vector of port &optional;
	};

	## Hand the flow to the batcher now (k packets, timer, removal, end of trace);
	## idempotent.
	global flush: function(c: connection, why: string);
	## Log a flow that is not sent to the detector.
	global log_local: function(c: connection, status: string, detail: string);

	## Scheduled SemiFlow::max_wait after a connection's first selected packet.
	global max_wait_expired: event(uid: string, id: conn_id);

	## Frames skipped because they were IP fragments (review R9).
	global fragments_skipped: count = 0;

	## Connections being collected, uid -> id (only while reading a trace: the end
	## of the trace flushes them, offline.zeek).
	global collecting: table[string] of conn_id = table();
}

redef record connection += {
	semiflow: FlowState &optional;
};

# The real DLT of the packet source (1 = Ethernet). pcap_packet$link_type is a
# two-value enum (src/iosource/Packet.cc@v8.1.0:190, src/types.bif:209-211), so it
# cannot be used; PacketSource$link_type is an int (base/init-bare.zeek "type
# PacketSource").
global dlt: count = 0;
global dlt_known = F;

hook finalize_semiflow(c: connection)
	{
	# Conn::RemovalHook (base/protocols/conn/removal-hooks.zeek@v6.0.0): cheaper than a
	# global connection_state_remove handler.
	flush(c, "removal");
	}

event SemiFlow::max_wait_expired(uid: string, id: conn_id)
	{
	# connection_exists / lookup_connection (src/zeek.bif@v6.0.0:3643, :3660): the
	# timer holds the id, not the record, so a removed connection is not kept alive.
	if ( ! connection_exists(id) )
		return;
	local c = lookup_connection(id);
	if ( c$uid == uid )
		flush(c, "max_wait");
	}

function wanted(c: connection): bool
	{
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

# Transport payload length as detector/sample/frame.py computes it (IP length fields minus
# the transport header). Zeek's tcp_hdr$dl is exactly that for TCP
# (src/IP.cc@v8.1.0:380-394).
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

# get_current_packet() returns the frame in hand, which for a reassembled datagram is
# its last fragment, not what pkt_hdr describes (note above get_current_packet in
# src/zeek.bif@v8.1.0; review R9). ip4_hdr$MF/offset: base/init-bare.zeek@v6.0.0:1744.
function is_fragment(p: pkt_hdr): bool
	{
	if ( p?$ip )
		return p$ip$MF || p$ip$offset > 0;
	if ( p?$ip6 )
		for ( i in p$ip6$exts )
			# ip6_ext_hdr$id, IPPROTO_FRAGMENT: base/init-bare.zeek@v6.0.0:1698, :1427.
			if ( p$ip6$exts[i]$id == IPPROTO_FRAGMENT )
				return T;
	return F;
	}

# A tunnelled connection's frame is the packet as captured, outer layers included
# (get_current_packet, src/zeek.bif@v8.2.2:4394-4396); the detector strips them down
# to the IP header that carries c$id (detector/sample/tunnel.py). If the OUTER datagram was
# reassembled, the frame is its last piece only: get_current_packet_header() gives the
# outer header, with MF=T when reassembled (zeek.bif@v8.2.2:4423-4430; the packet's
# own ip_hdr, src/iosource/Packet.cc@v8.2.2 ToRawPktHdrVal). raw_pkt_hdr:
# base/init-bare.zeek@v8.2.2:2403.
function outer_fragment(): bool
	{
	local h = get_current_packet_header();
	if ( h?$ip )
		return h$ip$MF || h$ip$offset > 0;
	if ( h?$ip6 )
		for ( i in h$ip6$exts )
			if ( h$ip6$exts[i]$id == IPPROTO_FRAGMENT )
				return T;
	return F;
	}

# First packet of a connection: in scope, sampled, not allow-listed? Marks it done
# (and logs why, where a line is due) otherwise.
function start_flow(c: connection): bool
	{
	if ( ! wanted(c) )
		{
		c$semiflow = FlowState($done=T);
		return F;
		}
	# rand, double_to_count, get_port_transport_proto, packet_source, reading_traces,
	# encode_base64, get_current_packet: src/zeek.bif@v6.0.0.
	if ( sampling_rate < 1.0 && rand(1000000) >= double_to_count(sampling_rate * 1000000.0) )
		{
		c$semiflow = FlowState($done=T);
		log_local(c, "unsampled", fmt("SemiFlow::sampling_rate=%s", sampling_rate));
		return F;
		}
	if ( |allowlist| > 0 )
		{
		local r = allowlisted(c$uid, c$id);
		if ( r != "" )
			{
			c$semiflow = FlowState($done=T);
			local why = allowlist[r]?$reason ? allowlist[r]$reason : "";
			log_local(c, "allowlisted", fmt("rule %s: %s", r, why));
			return F;
			}
		}
	c$semiflow = FlowState();
	if ( log_no_payload )
		{
		# The no_payload line is written at removal.
		Conn::register_removal_hook(c, finalize_semiflow);
		c$semiflow$hooked = T;
		}
	if ( ! dlt_known )
		{
		dlt = |packet_source()$link_type|;
		dlt_known = T;
		}
	return T;
	}

function flush(c: connection, why: string)
	{
	if ( ! c?$semiflow || c$semiflow$done )
		return;
	local st = c$semiflow;
	st$done = T;
	if ( st$hooked && why != "removal" )
		# Not from inside the hook loop (removal-hooks.zeek iterates the set).
		Conn::unregister_removal_hook(c, finalize_semiflow);
	if ( c$uid in collecting )
		delete collecting[c$uid];
	if ( ! st?$frames )
		{
		log_local(c, "no_payload", "no packet carried payload");
		return;
		}
	local is_orig: vector of bool = vector();
	for ( i in st$src_h )
		is_orig += st$src_h[i] == c$id$orig_h &&
		           (st$src_p[i] == 0/unknown || st$src_p[i] == c$id$orig_p);
	enqueue(c$uid, c$id, c$start_time, dlt, st$frames, st$ts, st$wire_len, is_orig);
	# Free the frames now: the connection may live on for minutes.
	delete st$frames;
	delete st$ts;
	delete st$wire_len;
	delete st$src_h;
	delete st$src_p;
	}

event new_packet(c: connection, p: pkt_hdr)
	{
	if ( c?$semiflow )
		{
		if ( c$semiflow$done )
			return;
		}
	else if ( ! start_flow(c) )
		return;

	if ( ! select_all && payload_len(p) == 0 )
		return;
	if ( is_fragment(p) || ( c?$tunnel && outer_fragment() ) )
		{
		++fragments_skipped;
		return;
		}

	local st = c$semiflow;
	if ( ! st?$frames )
		{
		# First selected packet: allocate, arm max_wait, and make sure the flow is
		# flushed at removal.
		st$frames = vector();
		st$ts = vector();
		st$wire_len = vector();
		st$src_h = vector();
		st$src_p = vector();
		if ( ! st$hooked )
			{
			Conn::register_removal_hook(c, finalize_semiflow);
			st$hooked = T;
			}
		schedule max_wait { SemiFlow::max_wait_expired(c$uid, c$id) };
		if ( reading_traces() )  # src/zeek.bif@v6.0.0:2037
			collecting[c$uid] = c$id;
		}

	# get_current_packet(): the frame that raised this event, link-layer header
	# included; valid inside new_packet (src/RunState.cc@v8.1.0:251-252;
	# base/init-bare.zeek "type pcap_packet").
	local pkt = get_current_packet();
	local data = pkt$data;
	if ( snaplen > 0 && |data| > snaplen )
		data = data[0:snaplen];
	# Packet bytes travel base64-encoded: Zeek's JSON writer copies non-escaped bytes
	# raw, which is not valid JSON for arbitrary bytes (docs/wire-format.md).
	st$frames += encode_base64(data);
	st$ts += pkt$ts_sec + pkt$ts_usec / 1000000.0;
	st$wire_len += pkt$len;
	if ( p?$ip )
		st$src_h += p$ip$src;
	else if ( p?$ip6 )
		st$src_h += p$ip6$src;
	else
		st$src_h += c$id$orig_h;
	if ( p?$tcp )
		st$src_p += p$tcp$sport;
	else if ( p?$udp )
		st$src_p += p$udp$sport;
	else
		# ICMP: conn_id ports are type/code; the address decides.
		st$src_p += 0/unknown;
	if ( |st$frames| >= k )
		flush(c, "k");
	}
