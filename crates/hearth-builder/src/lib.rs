//! placeholder: filled in by the image-build work.
