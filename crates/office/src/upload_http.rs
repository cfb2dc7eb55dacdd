//! upload_http (helper's work in progress).
