"""Pure translators between the client's API and a provider's, named ``<client>_<backend>``."""
