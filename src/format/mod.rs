//! On-disk and on-wire formats, parsed and written without file I/O.
pub mod object;
pub mod safetensors;
