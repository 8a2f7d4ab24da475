//! Kinds of other projects that the suite reads and writes, never installs: their CRDs
//! come with their projects (the tests apply manifests of their published schemas, in
//! `testkit/fixtures/`). Every field the suite does not use is kept as it was read, so a
//! replace (PUT) never drops what a newer version of the owner wrote.

pub mod attachment;
pub mod calico;
