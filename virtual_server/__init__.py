"""A Modbus TCP simulator serving the register maps of the configuration database."""
