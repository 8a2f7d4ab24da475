//! Shared parts of the bench binaries: `bench` (ipamd against DANM's algorithm) and
//! `cni-latency` (the `danm` plugin's ADD and DEL, process start to exit).

pub mod stats;
