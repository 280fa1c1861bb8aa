//! Object storage behind one trait.
