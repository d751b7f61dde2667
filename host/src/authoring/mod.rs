//! Tools for filter authors, apart from the request path:
//!
//! 1. [`scaffold`] writes a starter project (`weir filter new NAME --lang rust|js|python|c`)
//!    from the templates in `templates/`, compiled into the binary;
//! 2. [`harness`] loads a component and runs it on a virtual clock, through the same
//!    chain walk, runtime and limits as `weir run`;
//! 3. [`filter_test`] reads a case file and plays each case on the harness
//!    (`weir filter test FILTER.wasm --case CASES`).

pub mod filter_test;
pub mod harness;
pub mod scaffold;
