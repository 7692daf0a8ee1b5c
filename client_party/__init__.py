"""The data owner's side of Llamdex: load and validate the private table, train and package the expert."""
