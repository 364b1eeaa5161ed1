"""The workloads ``nsysan run`` profiles, each a script run as ``python <script>.py``; they ship inside the
package as ``nsysan.workloads`` so that an installed nsysan finds them (docs/workloads.md)."""
