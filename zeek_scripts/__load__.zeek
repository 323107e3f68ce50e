##! semiflow: deep anomaly detection on the first packets of every connection.
##! Loaded by ``@load semiflow`` (zkg links <site>/semiflow to this script_dir).
@load ./main
@load ./transport
@load ./collect
@load ./verdict
@load ./cluster
@load ./allowlist
