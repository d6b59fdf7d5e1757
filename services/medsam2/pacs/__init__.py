"""PACS over DICOMweb: endpoints configured by name, series fetched as volumes, SEGs stored back."""
