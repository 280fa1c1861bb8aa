//! Tensor codecs: pure encode/decode functions with no file I/O.
pub mod lossless;
pub mod ultradelta;
