"""The loop layer: what people do with the verdicts. Operators' reviews (review) and the label sets they make
(labelset), retraining and promoting a model (retrain, promote), rescoring old scans (rescore), the report and
its HTML page from Jinja2 templates (report, report_html), exports and the overview of the review queue
(export, overview), the verdict and review records of the CLI's json and the web's API (record). Imports from the station layer and below, and asks the store for every row."""
