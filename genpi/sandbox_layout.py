"""Where things are in every sandbox, whichever backend built it: the host directories it shows read-only, its
devices, its empty directories, the sizes of its small tmpfs mounts, and the environment its commands start with.

Constants only, so that the unshare backend's builder (genpi.sandbox_unshare) imports nothing else with them.
"""

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOP_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # the host's, read-only (followed where symlinks)
DEVICES = ("null", "zero", "full", "random", "urandom")
EMPTY_DIRS = ("home", "tmp", "var", "var/tmp", "opt", "srv", "mnt", "run")  # plus /root (mode 0700)
ETC_MB = 16  # the sandbox's /etc: a tmpfs of its own (a mount point cannot be renamed away)
SHM_MB = 16  # /dev/shm
# what every action (and the init) starts with: nothing of the caller's (no key reaches a command)
ACTION_ENV = {"PATH": PATH, "HOME": "/root", "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8", "TERM": "dumb",
              "SHELL": "/bin/bash"}
