//! Support for the end-to-end tests and scripts: the kill test harness behind `e2e/chaos.sh`
//! ([`chaos`]), on the workspace's test kit (`weir_testkit`).

pub mod chaos;
