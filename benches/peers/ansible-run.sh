#!/bin/bash
# ansible-run.sh PHASE(pre|cut|all) VARIANT(plain|default|tuned) STRATEGY(linear|free) FORKS
# Adapted from ../shared/peers/ansible-run.sh: the lab's ssh_config (-F) replaces the
# peers' UserKnownHostsFile/StrictHostKeyChecking options, the playbook runs one phase
# (tags), and the lab's inventory is passed with -i. The benchmark uses "default linear".
PH=$1 V=$2 S=$3 P=$4
cd ${BENCH:-.}
export ANSIBLE_CONFIG=${BENCH:-.}/ans/ansible.cfg ANSIBLE_STRATEGY=$S ANSIBLE_FORKS=$P ANSIBLE_NOCOLOR=1
mkdir -p ${BENCH:-.}/cp
CPD=$(mktemp -d ${BENCH:-.}/cp/XXXX); export ANSIBLE_SSH_CONTROL_PATH_DIR=$CPD
L="-o ForwardAgent=yes -F ${BENCH:-.}/ssh_config"
case $V in
  plain)   export ANSIBLE_SSH_ARGS="-o ControlMaster=no $L" ANSIBLE_PIPELINING=False ;;
  default) export ANSIBLE_SSH_ARGS="-C -o ControlMaster=auto -o ControlPersist=60s $L" ANSIBLE_PIPELINING=False ;;
  tuned)   export ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=600s $L" ANSIBLE_PIPELINING=True ;;
esac
case $PH in all) T=pre,cut ;; *) T=$PH ;; esac
${ANSIBLE_VENV:-${BENCH:-.}/venv}/bin/ansible-playbook -i ${BENCH:-.}/ans/inventory.ini --tags $T ${BENCH:-.}/ans/migrate.yml; rc=$?
for s in $CPD/*; do [ -S "$s" ] && ssh -o ControlPath=$s -O exit x >/dev/null 2>&1; done
exit $rc
