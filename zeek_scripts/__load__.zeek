##! semiflow: deep anomaly detection on the first packets of every connection.
##! Loaded by ``@load semiflow`` (zkg links <site>/semiflow to this script_dir).
@load ./main
@load ./transport
@load ./allowlist
@load ./verdict
@load ./drift
@load ./batch
@load ./collect
@load ./offline
@load ./cluster
