##! The analyst's allow-list: flows and host/service patterns marked benign
##! (`semiflow feedback mark`, or the feedback file downloaded from `semiflow report`).
##!
##! The file is read with the Input framework in REREAD mode, so an edited file takes
##! effect at the sensor without a restart: allow-listed connections are not published
##! to the detector (collect.zeek asks `allowlisted` on a connection's first packet and
##! logs status=allowlisted, so coverage stays visible), and
##! Anomalous_Flow notices for them are dropped, including verdicts already in flight.
##! File format: plugin/allowlist.py (Zeek ASCII input: #fields header, tab-separated,
##! "-" = unset). In a cluster every worker reads its own copy of the file.

@load base/frameworks/input
@load base/frameworks/notice
@load ./main

module SemiFlow;

export {
	## Path of the allow-list file; "" disables it.
	## e.g. ``redef SemiFlow::allowlist_file = "/opt/zeek/etc/semiflow-allowlist.tsv";``
	const allowlist_file: string = "" &redef;

	## Index of the allow-list table: the rule id.
	type AllowIdx: record {
		rule: string;
	};

	## One rule. Either uid (one flow), or host and/or service (a pattern).
	type AllowRule: record {
		## The marked connection's uid.
		uid: string &optional;
		## Either endpoint in this subnet (a host is a /32 or /128).
		host: subnet &optional;
		## The responder port and protocol, e.g. 443/tcp.
		service: port &optional;
		## The marked flow's 5-tuple and start (for retraining; not matched here).
		orig_h: addr &optional;
		orig_p: port &optional;
		resp_h: addr &optional;
		resp_p: port &optional;
		proto: string &optional;
		ts: time &optional;
		## Why it is benign, who said so, when; expired rules match nothing.
		reason: string &optional;
		analyst: string &optional;
		added: time &optional;
		expires: time &optional;
	};

	## The rules, kept current by the Input framework.
	global allowlist: table[string] of AllowRule = table();

	## The id of the first rule matching the connection, or "" (none).
	global allowlisted: function(uid: string, id: conn_id): string;

	## Anomalous_Flow notices dropped because of the allow-list.
	global allowlisted_notices: count = 0;
}

function allowlisted(uid: string, id: conn_id): string
	{
	# Rules are few (written by analysts): a scan per new connection is cheap.
	for ( [r], rule in allowlist )
		{
		if ( rule?$expires && rule$expires <= network_time() )
			next;
		if ( rule?$uid )
			{
			if ( rule$uid == uid )
				return r;
			next;
			}
		if ( ! rule?$host && ! rule?$service )
			next;
		if ( rule?$host && id$orig_h !in rule$host && id$resp_h !in rule$host )
			next;
		if ( rule?$service && id$resp_p != rule$service )
			next;
		return r;
		}
	return "";
	}

event zeek_init() &priority=5
	{
	if ( allowlist_file == "" )
		return;
	# Input::add_table (base/frameworks/input/main.zeek@v6.0.0:211), REREAD: re-read when
	# the file's inode or mtime changes.
	Input::add_table([$source=allowlist_file, $name="semiflow_allowlist",
	                  $idx=AllowIdx, $val=AllowRule, $destination=allowlist,
	                  $mode=Input::REREAD]);
	}

event Input::end_of_data(name: string, source: string)
	{
	if ( name == "semiflow_allowlist" )
		Reporter::info(fmt("semiflow: %d allow-list rule(s) from %s", |allowlist|, source));
	}

# Verdicts that were in flight when a rule arrived: drop the notice (breaking the hook
# stops the notice framework's own handlers, logging included; Notice::notice hook:
# base/frameworks/notice/main.zeek@v6.0.0:275, logged at priority -5).
hook Notice::notice(n: Notice::Info) &priority=10
	{
	if ( n$note == Anomalous_Flow && |allowlist| > 0 && n?$uid && n?$id &&
	     allowlisted(n$uid, n$id) != "" )
		{
		++allowlisted_notices;
		break;
		}
	}
