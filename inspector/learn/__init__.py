"""The learning layer (torch): the network and its artifact (model), the features and the head's training
(features, train, bulk), cross-validation and evaluation (crossval, heldout, evaluate), the normal model and its
maps (normalmap, normalfit), heat maps and Grad-CAM (explain), inference and the device's preparation (infer,
devprep), and building a model file end to end (build). Imports from data, imaging and base; never from the store
or anything above it."""
