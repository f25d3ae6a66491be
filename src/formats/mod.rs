//! The file formats whose exact rules the tool must follow: the relay's
//! `chatmail.ini` as Python's `iniconfig` reads it, `.env` as Docker
//! Compose v2 reads and writes it, and the user and group databases.
//! Nothing here touches the host.

pub mod dotenv;
pub mod ini;
pub mod passwd;
pub mod systemctl;
