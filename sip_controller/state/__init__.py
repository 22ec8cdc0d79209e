"""State that must outlive a process: the store protocol (:mod:`.store`), its two backends (:mod:`.sqlite`,
:mod:`.postgres`), their versioned migrations (:mod:`.migrations`), the plain data in and out (:mod:`.records`),
and :func:`~.factory.open_store`, which picks the backend from the settings."""
