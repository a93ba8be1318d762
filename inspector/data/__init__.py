"""The data layer: datasets on disk and the figures computed on them. labels.csv, bundles and folds (dataset;
datasetcheck for `inspector dataset check`), synthetic electrodes with their defect masks (synth, painter), the
images a dataset's views feed the network (views), localization of a map against a mask (localize), the metrics
and plots. Imports from imaging and base."""
