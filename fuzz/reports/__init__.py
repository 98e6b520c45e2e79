"""Reports: what a run found, as a console summary, a JSON report, a timeline and a picture."""
