"""The image layer: 16-bit scans in, network-ready pictures out. Readers split by format (read: sniff and
dispatch; tiff, png, dicom with its child-process decoder; imagecheck: what they share), the conversion of a
scan for the network (convert: the Conversion value and its methods), the quality gate (quality), preparing a
batch (prepare), and a model file's metadata read without torch (modelmeta). Imports only from base."""
