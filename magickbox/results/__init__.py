"""What happens to a job's results: sending them to other DICOM nodes (routing) and measures."""
