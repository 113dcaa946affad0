"""Files in and out: the safetensors reader and writer, key sources over files and state dicts, atomic output
files, cached file hashes."""
