From: c@example.org
Subject: tmp

in tmp, must be skipped
