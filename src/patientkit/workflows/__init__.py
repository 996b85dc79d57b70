"""The engines of patientkit's three workflows, each called by one command and printing
nothing itself (the commands in `patientkit.cli` parse options and print):

* `aggregate`: `export aggregate`, every download of an export counted over HTTP on
  worker processes and merged into one exact total;
* `replay`: `readings replay`, device readings into the store or a readings API;
* `submit`: `records submit`, test records into the store or a records API.

`store_process` is a store in a child process (replay writes from there, so parsing and
storing use both cores); `signals` turns Ctrl-C and SIGTERM into a request to stop.
"""
