//! Fuzz target: a byte stream of APDUs, resets, power cycles, authentications and secure
//! messaging (format in `iccard_cos::fuzzing::fuzz_one`) driven through the personalized
//! reference card; any broken invariant panics.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    iccard_cos::fuzzing::fuzz_one(data);
});
