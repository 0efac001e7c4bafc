"""Tools for trying the project locally: a GCS emulator that Orbax can write to."""
