"""The core: the flow-sample spec, models, artifacts, scoring. Imports nothing else of ours."""
