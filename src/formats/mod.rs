//! The two file formats whose exact rules the tool must follow: the
//! relay's `chatmail.ini` as Python's `iniconfig` reads it, and `.env` as
//! Docker Compose v2 reads and writes it. Nothing here touches the host.

pub mod dotenv;
pub mod ini;
