//! S3 store: not written yet.
