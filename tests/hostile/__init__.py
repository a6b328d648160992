"""The hostile-record suite: records no service may choke on, sent while a real job trains.

``kinds`` builds them, ``attack`` sends them, ``run`` runs the job clean and
under attack, ``report`` counts the services' rejections and prints the tables.
``bench/hostile.py`` is the command; ``tests/e2e/test_hostile_records.py`` the test.
"""
