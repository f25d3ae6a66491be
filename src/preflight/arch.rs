//! The architecture check: the relay's image is built for amd64 and arm64.

use super::{Check, CheckId};

pub fn check_architecture(arch: &str) -> Check {
    const ID: &str = CheckId::Architecture.id();
    match arch {
        "x86_64" => Check::ok(ID, "amd64"),
        "aarch64" => Check::warn(
            ID,
            "arm64: the relay's install stage downloads amd64 builds of some services (e.g. its dovecot packages, filtermail) and is not tested on arm64",
            "use an amd64 server, or adapt the Dockerfile's package installation for arm64",
        ),
        other => Check::warn(
            ID,
            format!("{other}: the appliance is only built and tested for amd64"),
            "use an amd64 server",
        ),
    }
}
