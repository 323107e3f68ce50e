##! Model drift reported by the detector: one notice per drifted signal and window.

@load base/frameworks/notice
@load ./main

module SemiFlow;

export {
	redef enum Notice::Type += {
		## The live traffic no longer looks like the served model's training data
		## (semiflow serve's drift monitor, detector/lifecycle/drift.py): retrain or review.
		Model_Drift
	};

	## Suppress repeats of the same signal's drift notice for this long.
	const drift_suppression: interval = 6 hrs &redef;
}

event SemiFlow::model_drift(model_version: string, signal: string, psi: double,
                            threshold: double, flows: count, window_start: double,
                            window_end: double)
	{
	# NOTICE (base/frameworks/notice/main.zeek@v6.0.0); suppression keys on
	# [note, identifier]: one notice per model version and signal per period.
	NOTICE([$note=Model_Drift,
	        $msg=fmt("traffic drifted from model %s's training data: %s PSI %.3f > %.3f",
	                 model_version, signal, psi, threshold),
	        $sub=fmt("flows=%d window=%s..%s", flows, double_to_time(window_start),
	                 double_to_time(window_end)),
	        $identifier=cat(model_version, signal),
	        $suppress_for=drift_suppression]);
	}
