//! chatmail.ini parsing with the semantics of Python's iniconfig.
