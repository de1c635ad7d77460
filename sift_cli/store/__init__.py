"""The files on disk: run directories, prepared-data directories and the atomic writes both rely on."""
