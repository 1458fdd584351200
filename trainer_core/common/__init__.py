"""The ground floor: generic helpers every other package may use and that import nothing of the project above them
(coded messages, project paths, bounded reads of user files, atomic writes, log tailing, strict JSON, the lint type)."""
